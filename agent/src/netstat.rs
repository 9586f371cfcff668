//! Counter groups of /proc/net/netstat and /proc/net/snmp (`TcpExt:`,
//! `Ip:`, …), by name. Each file gives a group as two lines, names then
//! values; hand-parsed because no well-kept crate reads these two files
//! alone (procfs reads them whole, with all of /proc behind it).

/// One reading of a group's two lines.
pub struct Group<'a> {
    names: Vec<&'a str>,
    values: Vec<&'a str>,
}

impl<'a> Group<'a> {
    /// The group whose lines start with `prefix` (`"TcpExt:"`); None when
    /// the text has no such pair of lines.
    pub fn parse(text: &'a str, prefix: &str) -> Option<Self> {
        let mut lines = text.lines().filter(|l| l.starts_with(prefix));
        Some(Self {
            names: lines.next()?.split_whitespace().collect(),
            values: lines.next()?.split_whitespace().collect(),
        })
    }

    /// A counter by its name (`ListenOverflows`); None when absent or not
    /// a number.
    pub fn get(&self, name: &str) -> Option<u64> {
        let i = self.names.iter().position(|n| *n == name)?;
        self.values.get(i)?.parse().ok()
    }
}
