#[derive(mitosis::Handover)]
#[handover(version = 2)]
enum Link {
    Down,
    Up {
        #[handover(since = 2)]
        since: u64,
    },
}

fn main() {}
