"""A stand-in for a user's own package: model classes and data functions fipgraph has never registered."""
