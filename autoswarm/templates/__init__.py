"""Workspace templates shipped with autoswarm (copied by `autoswarm init`)."""
