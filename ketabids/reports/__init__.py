"""HTML reports (participant QC report)."""
