"""Sample data, synthetic slides and the demo cohort."""
