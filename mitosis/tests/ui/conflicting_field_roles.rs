mod as_text {}

#[derive(mitosis::Handover)]
struct State {
    #[handover(skip, with = "as_text")]
    address: std::net::Ipv6Addr,
}

fn main() {}
