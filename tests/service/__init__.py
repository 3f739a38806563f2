"""Tests against servers started in process on loopback (gRPC, HTTP, a threaded S3)."""
