//! The router's state file survives being killed mid-save: a writer process saving ever newer
//! states is SIGKILLed at arbitrary moments, and every time the file holds one whole state.

use modelpod_router::store::StateFile;
use serde::{Deserialize, Serialize};
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
struct State {
    generation: u64,
    /// Long enough that a write takes several system calls; derived from `generation`, so a
    /// mix of two states is detectable.
    rows: Vec<String>,
}

fn state(generation: u64) -> State {
    State {
        generation,
        rows: (0..2_000).map(|i| format!("{generation}:{i}")).collect(),
    }
}

const WRITER: &str = "MODELPOD_STATE_FILE_WRITER";

/// In the writer process (re-run of this test with WRITER set): save forever.
fn write_forever(path: &str) -> ! {
    let file = StateFile::new(path.into());
    for generation in 0.. {
        file.save(&state(generation)).unwrap();
    }
    unreachable!()
}

#[test]
fn a_writer_killed_at_any_moment_leaves_one_whole_state() {
    if let Ok(path) = std::env::var(WRITER) {
        write_forever(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let file = StateFile::new(path.clone());
    let mut last = None;
    for round in 0..20u64 {
        let mut writer = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_writer_killed_at_any_moment_leaves_one_whole_state",
            ])
            .env(WRITER, &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different moment each round.
        std::thread::sleep(Duration::from_millis(30 + (round * 37) % 90));
        writer.kill().unwrap(); // SIGKILL
        writer.wait().unwrap();
        let Some(loaded) = file.load::<State>().unwrap() else {
            continue; // killed before its first save completed
        };
        let whole = state(loaded.generation);
        assert_eq!(loaded.rows, whole.rows, "round {round}: a torn state");
        last = Some(loaded.generation);
    }
    assert!(last.is_some(), "no save ever completed");
}
