//! Pipeline parallelism on one node (TP x PP workers): a stuck stage is named.

use hangwatch_tests::detect;
use std::time::Duration;

fn named(sim_args: &[&str], within: u64) -> hangwatch_tests::Detection {
    let (agent, sim) = hangwatch_tests::watched_sim(&[], sim_args, &[]);
    let d = detect(&agent, &sim, Duration::from_secs(within))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    println!(
        "{sim_args:?}: {:.1} s, suspects {:?}, reasons {:?}",
        d.opened_after, d.suspects, d.reasons
    );
    d
}

/// Stage 0's rank 1 stuck inside the step: its TP peer waits in the all-reduce, stage 1
/// waits for the hand-off; the odd one out is rank 1.
#[test]
fn a_rank_of_the_first_stage_stuck_in_a_step_is_named() {
    let d = named(
        &[
            "--tp",
            "2",
            "--pp",
            "2",
            "--fault",
            "rank=1,after=6,mode=sleep,at=in_step",
        ],
        15,
    );
    assert_eq!(d.suspects, vec![1], "{:?}", d.manifest);
    assert!(d.opened_after <= 8.0, "{:.1} s", d.opened_after);
}

/// The last stage's first rank is the output rank: stopped, it is named.
#[test]
fn the_output_rank_of_the_last_stage_stopped_is_named() {
    let d = named(
        &[
            "--tp",
            "1",
            "--pp",
            "2",
            "--fault",
            "rank=1,after=6,mode=stop",
        ],
        12,
    );
    assert_eq!(d.suspects, vec![1], "{:?}", d.manifest);
    assert!(d.opened_after <= 5.0, "{:.1} s", d.opened_after);
}
