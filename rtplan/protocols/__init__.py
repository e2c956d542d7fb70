"""Treatment protocols shipped with rtplan, as TOML files (see rtplan.protocol)."""
