"""Knowledge base: articles, the rapidfuzz matcher, evaluation and the sample KB."""
