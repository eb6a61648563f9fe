"""The results side: reading a sweep's runs from their dirs (runs), the report (report), the ensemble of a
setting's models (ensemble), their figures (figures), and what a sweep writes when it ends (finish). Of the sweep
side it imports only where a search's study lives (sweep.storage) and how its values read (sweep.space); the sweep
side imports it for reading runs (runs) and where a sweep ends (finish)."""
