-- 0013: segments match a purchase's category without regard to ASCII
-- case (Shopify's `product_type` is "Tea" where a marketer types "tea"),
-- with `category = ? COLLATE NOCASE`. Only an index of that collation
-- serves such a comparison; the binary one stays for cross-sell, which
-- groups categories as the shop spells them.
CREATE INDEX order_lines_category_nocase_idx ON order_lines (category COLLATE NOCASE) WHERE category IS NOT NULL;
