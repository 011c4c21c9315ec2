"""The thin HTTP shim in front of the booking-core database functions."""
