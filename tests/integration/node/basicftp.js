// Drives basic-ftp (npm) for the acceptance tests: one client, one
// session, the steps given on the command line, each reported as a JSON
// line on stdout. Exit status 1 at the first failed step.
//
//   node basicftp.js '{"host":..,"port":..,"user":..,"password":..,"secure":true}' \
//        upload:LOCAL:REMOTE download:REMOTE:LOCAL list:PATH size:PATH
"use strict";
const ftp = require("basic-ftp");

async function main() {
    const opts = JSON.parse(process.argv[2]);
    const client = new ftp.Client(60000);
    client.ftp.verbose = !!opts.verbose;
    await client.access({
        host: opts.host,
        port: opts.port,
        user: opts.user,
        password: opts.password,
        secure: opts.secure,
        secureOptions: { rejectUnauthorized: false },
    });
    try {
        for (const step of process.argv.slice(3)) {
            const [op, ...args] = step.split(":");
            let result;
            if (op === "upload") result = await client.uploadFrom(args[0], args[1]);
            else if (op === "download") result = await client.downloadTo(args[1], args[0]);
            else if (op === "list") result = (await client.list(args[0] || "")).map((f) => ({ name: f.name, size: f.size }));
            else if (op === "size") result = await client.size(args[0]);
            else throw new Error("unknown step " + op);
            console.log(JSON.stringify({ step, ok: true, code: result && result.code, message: result && result.message, result }));
        }
    } finally {
        client.close();
    }
}

main().catch((err) => {
    console.log(JSON.stringify({ ok: false, code: err.code, error: String(err.message || err) }));
    process.exit(1);
});
