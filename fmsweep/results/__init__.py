"""The results side: reading a sweep's runs from their dirs (runs), the report (report), the ensemble of a
setting's models (ensemble), their figures (figures), and what a sweep writes when it ends (finish). It imports
nothing of the sweep side; the sweep side imports it only where a sweep ends."""
