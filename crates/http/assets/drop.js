/* dropvault page script (placeholder) */
