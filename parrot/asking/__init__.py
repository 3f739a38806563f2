"""The asker contract shared by asker training and serving: prompt formats (``prompting``) and the
training examples built from real sessions (``training_data``). Both sides import it from here."""
