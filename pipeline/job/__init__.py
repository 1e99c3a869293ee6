"""The distributed audit: plan tasks, start Ray actors, dispatch, retry, commit.

Ray is imported where it is used, never at package import.
"""
