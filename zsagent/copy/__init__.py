"""The copy core: one pipeline from a Source to Sinks with parallel reads and one in-order MD5."""
