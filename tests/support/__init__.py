"""Test and benchmark support: drift scenarios, synthetic champions."""
