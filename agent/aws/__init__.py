"""Descriptions of the AWS services the agent talks to, shipped as package data."""
