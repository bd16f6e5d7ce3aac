from dist_s2s.cli import run

run()
