struct OldState {
    generation: u32,
}

#[derive(mitosis::Handover)]
#[handover(version = 2, migrate_from(OldState))]
struct State {
    generation: u64,
}

impl From<OldState> for State {
    fn from(old: OldState) -> State {
        State { generation: old.generation.into() }
    }
}

fn main() {}
