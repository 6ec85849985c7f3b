"""The red-team suite: a catalogue of attacks run against a candidate or the champion in a scratch copy of
the project, each reporting what in the pipeline caught it (fraudguard.redteam.catalogue lists them)."""
