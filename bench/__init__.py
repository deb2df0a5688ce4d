"""Load benchmark of Bifröst against a Node.js reference server of the same protocol.

`python -m bench` starts both servers on free loopback ports, drives them with the same
generator processes, alternating between them run by run, and writes the medians to
`bench/RESULTS.md`. See `bench/README.md` for what each figure means and why it is measured
the way it is.
"""
