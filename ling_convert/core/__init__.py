"""Foundation: errors, lazy sources, atomic outputs, fast file I/O, worker pool, data tables, name patterns.

Depends on nothing else in ling_convert; every other layer builds on it."""
