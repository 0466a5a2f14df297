/* fmt.c - a small vsnprintf. */
#include "fmt.h"

struct out {
	char *buf;
	size_t size;
	size_t len; /* would-be length */
};

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void pad(struct out *o, char c, int n)
{
	while (n-- > 0)
		put(o, c);
}

/* Emit a number given as its digits (most significant first) and sign. */
static void emit_number(struct out *o, u64 v, unsigned base, bool upper, bool neg, int width, bool left,
			bool zero, const char *prefix)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char tmp[24];
	int n = 0;
	int plen = prefix ? 2 : 0;

	do {
		tmp[n++] = digits[v % base];
		v /= base;
	} while (v);

	int len = n + (neg ? 1 : 0) + plen;
	if (!left && !zero)
		pad(o, ' ', width - len);
	if (neg)
		put(o, '-');
	if (prefix) {
		put(o, prefix[0]);
		put(o, prefix[1]);
	}
	if (!left && zero)
		pad(o, '0', width - len);
	while (n)
		put(o, tmp[--n]);
	if (left)
		pad(o, ' ', width - len);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };

	for (const char *p = fmt; *p; p++) {
		if (*p != '%') {
			put(&o, *p);
			continue;
		}
		p++;
		bool left = false, zero = false;
		for (;; p++) {
			if (*p == '-')
				left = true;
			else if (*p == '0')
				zero = true;
			else
				break;
		}
		int width = 0;
		if (*p == '*') {
			width = va_arg(ap, int);
			if (width < 0) {
				left = true;
				width = -width;
			}
			p++;
		} else {
			while (*p >= '0' && *p <= '9')
				width = width * 10 + (*p++ - '0');
		}
		int prec = -1;
		if (*p == '.') {
			p++;
			prec = 0;
			if (*p == '*') {
				prec = va_arg(ap, int);
				p++;
			} else {
				while (*p >= '0' && *p <= '9')
					prec = prec * 10 + (*p++ - '0');
			}
		}
		int lng = 0; /* 0 int, 1 long, 2 long long, 3 size_t */
		for (;; p++) {
			if (*p == 'l')
				lng = lng == 1 ? 2 : 1;
			else if (*p == 'z')
				lng = 3;
			else if (*p == 'h')
				continue;
			else
				break;
		}
		if (left)
			zero = false;

		switch (*p) {
		case 'd':
		case 'i': {
			s64 v = lng == 0 ? va_arg(ap, int) : lng == 3 ? (s64)va_arg(ap, size_t) : va_arg(ap, long long);
			u64 mag = v < 0 ? (u64)0 - (u64)v : (u64)v;
			emit_number(&o, mag, 10, false, v < 0, width, left, zero, NULL);
			break;
		}
		case 'u':
		case 'x':
		case 'X':
		case 'o': {
			u64 v = lng == 0 ? va_arg(ap, unsigned int) : lng == 3 ? va_arg(ap, size_t)
									: va_arg(ap, unsigned long long);
			unsigned base = *p == 'u' ? 10 : *p == 'o' ? 8 : 16;
			emit_number(&o, v, base, *p == 'X', false, width, left, zero, NULL);
			break;
		}
		case 'p':
			emit_number(&o, (u64)(uintptr_t)va_arg(ap, void *), 16, false, false, width, left, zero, "0x");
			break;
		case 'c': {
			char c = (char)va_arg(ap, int);
			if (!left)
				pad(&o, ' ', width - 1);
			put(&o, c);
			if (left)
				pad(&o, ' ', width - 1);
			break;
		}
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			int n = 0;
			while (s[n] && (prec < 0 || n < prec))
				n++;
			if (!left)
				pad(&o, ' ', width - n);
			for (int i = 0; i < n; i++)
				put(&o, s[i]);
			if (left)
				pad(&o, ' ', width - n);
			break;
		}
		case '%':
			put(&o, '%');
			break;
		case '\0':
			p--; /* trailing '%': stop at the terminator */
			break;
		default:
			put(&o, '%');
			put(&o, *p);
			break;
		}
	}
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}
