# The environment every job inherits from the Snakemake process (set once, at parse time).

# Jobs run `python -m workflow.<step>` from any working directory, with this interpreter
# (first on PATH, so a conda env activated for a rule still takes precedence).
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])),
    PATH=os.pathsep.join(filter(None, [os.path.dirname(sys.executable), os.environ.get("PATH")])),
)

# The mirror of every source reaches the download CLI through the environment (a JSON map
# source -> mirror or null), never through params or the command text: a file's identity is its
# public URL + sha256/size, so switching mirrors neither reruns downloads nor changes the
# `snakemake --cache` key. Job subprocesses inherit it; remote executors re-parse this file.
os.environ.update(STAGERUN_MIRRORS=json.dumps({name: source_mirror(name, config) for name in SOURCES}))
