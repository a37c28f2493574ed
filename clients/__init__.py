"""Callers of stockcore: the typed async client and the stockctl command-line tool."""
