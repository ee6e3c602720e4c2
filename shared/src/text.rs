//! Text folding shared by parsing and search: Japanese users type
//! full-width letters and digits (`ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ`), and kana
//! in either hiragana or katakana.

/// Maps full-width ASCII variants (U+FF01..U+FF5E) and the ideographic
/// space to their ASCII forms; leaves everything else alone.
pub fn fold_width(input: &str) -> String {
    input
        .chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            '\u{3000}' => ' ',
            _ => c,
        })
        .collect()
}

/// The form a search term is stored and matched in: width-folded,
/// lower-case, hiragana turned into katakana, spaces removed (so
/// "山田 太郎" and "山田太郎" meet).
pub fn search_fold(input: &str) -> String {
    fold_width(input)
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '\u{3041}'..='\u{3096}' => char::from_u32(c as u32 + 0x60).unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// Whether `text` contains a control character other than tab and line
/// breaks; such values are refused rather than stored.
pub fn has_control_chars(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_width_case_and_kana() {
        assert_eq!(
            fold_width("ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ"),
            "taro@example.jp"
        );
        assert_eq!(search_fold("やまだ タロウ"), "ヤマダタロウ");
        assert_eq!(search_fold("Yamada"), "yamada");
        assert!(has_control_chars("a\u{0}b"));
        assert!(!has_control_chars("a\tb\n"));
    }
}
