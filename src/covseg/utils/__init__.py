"""Small helpers shared across the package (atomic writes, paths, seeding, progress)."""
