"""Test doubles for the proxy: a local etcd and fake OpenAI-compatible workers."""
