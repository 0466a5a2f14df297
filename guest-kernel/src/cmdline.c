/* cmdline.c - command-line parsing. */
#include "cmdline.h"

#include "string.h"

static char cmdline[CMDLINE_MAX];

struct word {
	const char *key;
	size_t key_len;
	const char *val; /* NULL for a bare "key" */
	size_t val_len;
};

void cmdline_init(const char *src, size_t max)
{
	size_t n = 0;

	if (src) {
		if (max > CMDLINE_MAX - 1)
			max = CMDLINE_MAX - 1;
		n = strnlen(src, max);
		memcpy(cmdline, src, n);
	}
	cmdline[n] = '\0';
}

const char *cmdline_raw(void) { return cmdline; }

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Next word starting at *pos; false at the end. */
static bool next_word(size_t *pos, struct word *w)
{
	size_t i = *pos;

	while (cmdline[i] && is_space(cmdline[i]))
		i++;
	if (!cmdline[i])
		return false;
	w->key = &cmdline[i];
	while (cmdline[i] && !is_space(cmdline[i]) && cmdline[i] != '=')
		i++;
	w->key_len = (size_t)(&cmdline[i] - w->key);
	w->val = NULL;
	w->val_len = 0;
	if (cmdline[i] == '=') {
		i++;
		if (cmdline[i] == '"') {
			i++;
			w->val = &cmdline[i];
			while (cmdline[i] && cmdline[i] != '"')
				i++;
			w->val_len = (size_t)(&cmdline[i] - w->val);
			if (cmdline[i] == '"')
				i++;
		} else {
			w->val = &cmdline[i];
			while (cmdline[i] && !is_space(cmdline[i]))
				i++;
			w->val_len = (size_t)(&cmdline[i] - w->val);
		}
	}
	*pos = i;
	return true;
}

static bool key_is(const struct word *w, const char *key)
{
	size_t n = strlen(key);

	return w->key_len == n && memcmp(w->key, key, n) == 0;
}

/* Last occurrence of key, or false. */
static bool find_last(const char *key, struct word *out)
{
	size_t pos = 0;
	struct word w;
	bool found = false;

	while (next_word(&pos, &w)) {
		if (key_is(&w, key)) {
			*out = w;
			found = true;
		}
	}
	return found;
}

bool cmdline_has(const char *key)
{
	struct word w;

	return find_last(key, &w);
}

bool cmdline_get_str(const char *key, char *buf, size_t size)
{
	struct word w;

	if (!find_last(key, &w) || size == 0)
		return false;
	size_t n = w.val_len < size - 1 ? w.val_len : size - 1;
	if (n)
		memcpy(buf, w.val, n);
	buf[n] = '\0';
	return true;
}

bool parse_u64(const char *s, size_t len, u64 *out, size_t *used)
{
	size_t i = 0;
	u64 v = 0;
	unsigned base = 10;
	bool any = false;

	if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		i = 2;
	}
	for (; i < len; i++) {
		char c = s[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else
			break;
		v = v * base + d;
		any = true;
	}
	if (!any)
		return false;
	if (i < len) {
		switch (s[i]) {
		case 'k': case 'K': v <<= 10; i++; break;
		case 'm': case 'M': v <<= 20; i++; break;
		case 'g': case 'G': v <<= 30; i++; break;
		default: break;
		}
	}
	*out = v;
	if (used)
		*used = i;
	return true;
}

u64 cmdline_get_u64(const char *key, u64 dflt)
{
	struct word w;
	u64 v;
	size_t used;

	if (!find_last(key, &w) || !w.val)
		return dflt;
	if (!parse_u64(w.val, w.val_len, &v, &used) || used != w.val_len)
		return dflt;
	return v;
}

void cmdline_for_each(const char *key, cmdline_visit_fn fn, void *arg)
{
	size_t pos = 0;
	struct word w;

	while (next_word(&pos, &w))
		if (key_is(&w, key))
			fn(w.val ? w.val : "", w.val_len, arg);
}
