"""Tests of the AWS service descriptions the agent ships."""
