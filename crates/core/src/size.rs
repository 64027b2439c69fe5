//! Sizes as settings write them ("10GiB"): one parser for the
//! configuration, the users file and directory attributes.

/// A size setting in bytes: a whole number, alone (bytes) or followed by
/// one of the units B, KiB, MiB, GiB, TiB (powers of 1024; a space before
/// the unit is allowed). Decimal units (KB, MB …) and fractions are refused
/// rather than guessed at.
pub fn parse_size(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u32); 5] = [("B", 0), ("KiB", 10), ("MiB", 20), ("GiB", 30), ("TiB", 40)];
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim_start();
    let wrong = || {
        format!("\"{text}\" is not a size: use a whole number of bytes, or one followed by B, KiB, MiB, GiB or TiB (e.g. \"10GiB\")")
    };
    let number: u64 = number.parse().map_err(|_| wrong())?;
    let shift = if unit.is_empty() {
        0
    } else {
        UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|&(_, shift)| shift)
            .ok_or_else(wrong)?
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}
