//! Every fault mode and position once (spread over TP 2, 4, 8 and rank positions), plus
//! an engine that must stay quiet for two minutes of idle-then-bursty load with 8 s
//! steps. The full matrix and the 10-minute quiet run are in docs/results.

use std::process::Command;

#[test]
fn quick_detection_matrix() {
    // Cargo builds this package's binaries for its tests and names the path.
    let out = Command::new(env!("CARGO_BIN_EXE_detection-matrix"))
        .args(["--quick", "--parallel", "3", "--quiet-minutes", "2"])
        .output()
        .expect("running the matrix");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains(": 0 incidents"),
        "the quiet engine raised an incident:\n{stdout}"
    );
}
