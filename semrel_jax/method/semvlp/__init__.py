"""SemVLP: one shared BERT pre-trained iteratively in single-stream and two-stream mode (model, objectives, schedule)."""
