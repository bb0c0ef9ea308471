"""Long recordings into training segments: Silero VAD, then speech regions merged and split
into segments of `segment.min_s`..`segment.max_s` seconds, cut only in pauses."""
