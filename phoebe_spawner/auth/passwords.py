"""The password policy of jwt mode: length, not blank, not a common password.

:func:`password_problem` is called by :meth:`JWTAuthenticator.register` and by the
``create-user`` subcommand; it returns the client-facing reason a password is refused,
or ``None``. :data:`COMMON_PASSWORDS` holds passwords that top the published lists of
leaked passwords (compared case-insensitively, surrounding spaces ignored): a guesser
tries these first, and the failed-login limits only slow guessing down.
"""

from __future__ import annotations

MAX_PASSWORD_LENGTH = 1024

#: frequent leaked passwords, including the ones of 10+ characters the length rule lets
#: through; shorter ones stay listed for hubs configured with a smaller minimum
_COMMON = """
123456 123456789 12345678 password qwerty123 qwerty1 111111 12345 secret 123123
1234567890 1234567 000000 qwerty abc123 password1 iloveyou 654321 123321 666666
987654321 1q2w3e4r 1q2w3e4r5t 1q2w3e 121212 123qwe 123abc 112233 qwertyuiop
qwertyuiop123 1qaz2wsx 1qaz2wsx3edc zaq12wsx zaq1zaq1 asdfghjkl asdfghjkl123
zxcvbnm zxcvbnm123 qazwsx qazwsxedc 1234qwer qwer1234 aaaaaa 7777777 888888
11111111 1111111111 0000000000 00000000 123456a 123456789a a123456 a123456789
password123 password1234 password12 password12345 passw0rd p@ssw0rd p@ssword
pa$$word pass1234 passpass password! password01 mypassword mypassword1
letmein letmein123 welcome welcome1 welcome123 welcome2024 welcome2025 welcome2026
admin admin123 admin1234 administrator root toor changeme changeme123 default
guest login login123 master master123 access access14 trustno1 whatever
monkey dragon football baseball soccer hockey basketball superman batman
michael jennifer jessica ashley charlie michelle daniel thomas jordan hunter
sunshine princess shadow starwars pokemon naruto freedom flower hello hello123
iloveyou1 iloveyou2 loveyou lovely love123 fuckyou fuckyou1 asshole biteme
qwerty12345 qwerty123456 1234567891 12345678910 123456789012 0123456789 9876543210
12341234 123454321 11223344 1122334455 147258369 159753 159357 741852963
abcd1234 abcdef abcdefg abcdefgh abcdefghij abc12345 abcde12345 aa123456 qq123456
q1w2e3r4 q1w2e3r4t5 q1w2e3r4t5y6 1a2b3c4d 1234abcd zxcv1234 asdf1234 asdfasdf
asdfgh asdf qwertz qwertzuiop azerty azertyuiop 1q2w3e4r5t6y 1qazxsw2 !qaz2wsx
computer internet samsung google linkedin facebook myspace1 ilovechina chocolate
cheese butterfly purple orange banana pepper summer winter spring autumn
summer2024 summer2025 winter2024 winter2025 spring2025 autumn2025 december
september november october
secret123 secret1234 supersecret topsecret test test123 test1234 testing testtest
temp1234 temporary demo demo1234 user user1234 username student student123
teacher university school123 phoebe phoebe123 phoebe2 eclipse binary
"""
COMMON_PASSWORDS = frozenset(_COMMON.split())


def password_problem(password: str, min_length: int, *, reject_common: bool = True) -> str | None:
    """Why ``password`` may not be used (the 400's detail), or ``None`` if it may."""
    if not password.strip():
        return "Password must not be blank"
    if len(password) < min_length:
        return f"Password must be at least {min_length} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"Password is too long ({MAX_PASSWORD_LENGTH} characters at most)"
    if reject_common and password.strip().lower() in COMMON_PASSWORDS:
        return "Password is too common: choose one that is not on lists of leaked passwords"
    return None
