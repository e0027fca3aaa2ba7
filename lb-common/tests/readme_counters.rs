//! The README's verdict table must list every counter with its code and kind, and nothing else.
use lb_common::Stat;

#[test]
fn readme_lists_every_counter_with_its_code_and_kind() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for s in Stat::ALL {
        let row = format!("| {} | `{}` | {} |", *s as u32, s.label(), s.kind());
        assert!(readme.contains(&row), "README is missing the row {row:?}");
    }
    let rows = readme
        .lines()
        .filter(|l| {
            l.starts_with("| ")
                && l.contains(" | `")
                && (l.contains("_")
                    && l.split('|')
                        .nth(1)
                        .is_some_and(|c| c.trim().parse::<u32>().is_ok()))
        })
        .count();
    assert_eq!(
        rows,
        Stat::ALL.len(),
        "README lists counters that do not exist"
    );
}
