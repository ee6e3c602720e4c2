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

/// Half-width katakana U+FF66..=U+FF9D in order, as full-width.
const HALF_WIDTH_KATAKANA: &str = "ヲァィゥェォャュョッーアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン";

/// Turns half-width katakana (`ﾔﾏﾀﾞ`, common in older Japanese systems)
/// into full-width, joining a voiced or semi-voiced mark with its kana.
pub fn fold_half_width_katakana(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        match c {
            '\u{FF66}'..='\u{FF9D}' => {
                let index = (c as u32 - 0xFF66) as usize;
                out.push(HALF_WIDTH_KATAKANA.chars().nth(index).unwrap_or(c));
            }
            '\u{FF9E}' | '\u{FF9F}' => {
                let semi = c == '\u{FF9F}';
                let composed = out.chars().last().and_then(|base| {
                    let voiced = match base {
                        'ウ' if !semi => Some('ヴ'),
                        // Each of these is followed in Unicode by its voiced
                        // (and, for ハ行, semi-voiced) form.
                        _ if !semi && "カキクケコサシスセソタチツテト".contains(base) => {
                            char::from_u32(base as u32 + 1)
                        }
                        _ if "ハヒフヘホ".contains(base) => {
                            char::from_u32(base as u32 + if semi { 2 } else { 1 })
                        }
                        _ => None,
                    };
                    voiced.map(|v| (base, v))
                });
                match composed {
                    Some((_, voiced)) => {
                        out.pop();
                        out.push(voiced);
                    }
                    None => out.push(if semi { '゜' } else { '゛' }),
                }
            }
            '\u{FF61}' => out.push('。'),
            '\u{FF62}' => out.push('「'),
            '\u{FF63}' => out.push('」'),
            '\u{FF64}' => out.push('、'),
            '\u{FF65}' => out.push('・'),
            _ => out.push(c),
        }
    }
    out
}

/// The form a search term is stored and matched in: width-folded (both
/// full-width ASCII and half-width katakana), lower-case, hiragana turned
/// into katakana, spaces removed (so "山田 太郎" and "山田太郎" meet).
pub fn search_fold(input: &str) -> String {
    fold_half_width_katakana(&fold_width(input))
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
        assert_eq!(search_fold("ﾔﾏﾀﾞ ﾀﾛｳ"), "ヤマダタロウ");
        assert_eq!(search_fold("ｽｽﾞｷ ﾊﾟﾝ ｳﾞｧ"), "スズキパンヴァ");
        assert_eq!(search_fold("ｱﾞ"), "ア゛");
        assert_eq!(search_fold("ﾂﾞﾃﾞﾄﾞﾎﾟ"), "ヅデドポ");
        assert!(has_control_chars("a\u{0}b"));
        assert!(!has_control_chars("a\tb\n"));
    }
}
