"""The email channel: parsing, classification, reply stripping, threading tokens."""
