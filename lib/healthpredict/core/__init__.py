"""Settings, storage, the storage layout and shared constants: what every layer stands on."""
