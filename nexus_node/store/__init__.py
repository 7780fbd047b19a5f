"""Durable node state: SQLite (through aiosqlite) for records, content-addressed files for blobs."""
