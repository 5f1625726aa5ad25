"""The tests of fuzz/ mirror its packages (inputs, judging, corpus, campaigns, triage, cli); this
directory, which pytest puts on sys.path for its conftest, holds what they share (``findings``)."""
