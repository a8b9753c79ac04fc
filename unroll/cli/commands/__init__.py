"""CLI commands: one module each, each exposing ``command``."""
