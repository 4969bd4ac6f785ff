/* Debian version numbers compared as dpkg compares them (deb-version(7)): [EPOCH:]UPSTREAM
 * [-REVISION], each part compared by alternating runs of non-digits (letters sort before
 * other characters, '~' before everything, even the end) and numbers (numerically). The
 * image manager compares package and kernel versions with it: "4.0.2-3+b1" > "4.0.2-3",
 * "1:0.1" > "0.2", "1.0~rc1" < "1.0". */
#pragma once

/* <0, 0 or >0 as a is lower than, equal to or higher than b. Any string is accepted (a
 * version that is not well formed is compared by the same rules, as dpkg does with a
 * warning); NULL sorts before every string. */
int debversion_compare(const char *a, const char *b);

/* The same order over whole strings, with no epoch or revision: for version strings that are
 * not Debian versions, such as kernel releases ("6.1.0-13-cloud-amd64" < "6.1.0-57"). */
int debversion_compare_plain(const char *a, const char *b);
