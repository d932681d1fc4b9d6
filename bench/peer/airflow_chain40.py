"""chain40 through Apache Airflow, the peer Sluice users would otherwise pick.

Runs with the python of the virtualenv `setup.sh` prepares:

    python airflow_chain40.py --db-url postgresql+psycopg2://postgres@127.0.0.1:5432/DB \
        --home DIR --script true [--tasks 40] [--runs 1]

A fresh AIRFLOW_HOME with a DAG of `--tasks` chained BashOperators, the
metadata on PostgreSQL, LocalExecutor, a real `airflow scheduler` process,
the DAG triggered with the CLI. Everything else is Airflow's default. Times
are read from the metadata DB: the run's `queued_at` (when the trigger
stored it) to its `end_date`, and each task instance's start and end.
Prints one JSON object per run on stdout, in the shape of the bench's
`ChainRun`: {"submitted", "finished", "tasks": [{"name", "start", "end"}]}.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import psycopg2

DAG = '''
import pendulum
from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(
    dag_id={dag_id!r},
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,
) as dag:
    previous = None
    for i in range({tasks}):
        task = BashOperator(task_id=f"t{{i:02d}}", bash_command={script!r})
        if previous is not None:
            previous >> task
        previous = task
'''


def log(message):
    print(f"[airflow] {message}", file=sys.stderr, flush=True)


def iso(ts):
    return ts.astimezone().isoformat() if ts else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--script", default="true")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()

    dag_id = "chain40_true" if args.script == "true" else "chain40_sleep"
    dags = os.path.join(args.home, "dags")
    os.makedirs(dags, exist_ok=True)
    with open(os.path.join(dags, f"{dag_id}.py"), "w") as f:
        f.write(DAG.format(dag_id=dag_id, tasks=args.tasks, script=args.script))

    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": args.home,
        "AIRFLOW__CORE__DAGS_FOLDER": dags,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": args.db_url,
        # Only so the new DAG file is parsed at once; run timing is untouched.
        "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",
    })
    bin_dir = os.path.dirname(sys.executable)
    airflow = os.path.join(bin_dir, "airflow")
    pg = psycopg2.connect(args.db_url.replace("postgresql+psycopg2://", "postgresql://"))
    pg.autocommit = True

    log("migrating the metadata database")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    version = subprocess.run([airflow, "version"], env=env, check=True, capture_output=True, text=True).stdout.strip()

    scheduler_log = open(os.path.join(args.home, "scheduler.log"), "w")
    scheduler = subprocess.Popen([airflow, "scheduler"], env=env, stdout=scheduler_log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            with pg.cursor() as cur:
                cur.execute("SELECT count(*) FROM dag WHERE dag_id = %s AND NOT is_paused", (dag_id,))
                if cur.fetchone()[0] == 1:
                    break
            if scheduler.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the scheduler did not load {dag_id}; see {args.home}/scheduler.log")
            time.sleep(0.5)
        log(f"airflow {version}: DAG {dag_id} loaded")
        for n in range(args.runs):
            run_id = f"bench_{n}_{int(time.time())}"
            subprocess.run([airflow, "dags", "trigger", dag_id, "--run-id", run_id], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 600
            while True:
                with pg.cursor() as cur:
                    cur.execute("SELECT state, queued_at, end_date FROM dag_run WHERE dag_id = %s AND run_id = %s",
                                (dag_id, run_id))
                    state, queued_at, end_date = cur.fetchone()
                if state in ("success", "failed"):
                    break
                if time.time() > deadline:
                    raise SystemExit(f"run {run_id} not finished within 600 s: {state}")
                time.sleep(0.2)
            if state != "success":
                raise SystemExit(f"run {run_id} ended {state}")
            with pg.cursor() as cur:
                cur.execute("SELECT task_id, start_date, end_date FROM task_instance WHERE dag_id = %s AND run_id = %s",
                            (dag_id, run_id))
                tasks = [{"name": t, "start": iso(s), "end": iso(e)} for t, s, e in cur.fetchall()]
            log(f"run {run_id}: {state} in {(end_date - queued_at).total_seconds():.1f} s")
            print(json.dumps({"airflow_version": version, "submitted": iso(queued_at), "finished": iso(end_date),
                              "tasks": tasks}), flush=True)
    finally:
        # LocalExecutor forks workers: end the scheduler's whole session.
        try:
            os.killpg(scheduler.pid, signal.SIGTERM)
            scheduler.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(scheduler.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            scheduler.wait()
        # Leftover task runners, if any, are in the same session.
        try:
            os.killpg(scheduler.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pg.close()


if __name__ == "__main__":
    main()
