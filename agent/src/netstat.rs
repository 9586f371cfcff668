//! The `TcpExt:` counters of /proc/net/netstat, by name. The file gives
//! each group as two lines, names then values; hand-parsed because no
//! well-kept crate reads this one file (procfs reads it whole, with all
//! of /proc behind it).

/// One reading of the `TcpExt:` lines.
pub struct TcpExt<'a> {
    names: Vec<&'a str>,
    values: Vec<&'a str>,
}

impl<'a> TcpExt<'a> {
    /// None when the file has no `TcpExt:` pair of lines.
    pub fn parse(netstat: &'a str) -> Option<Self> {
        let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
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
