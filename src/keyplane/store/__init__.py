"""The SQL store: tables, engine, migrations."""
