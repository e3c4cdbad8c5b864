"""The synthetic study: phantom maths and the cohort writer (``ketabids demo`` runs it)."""
