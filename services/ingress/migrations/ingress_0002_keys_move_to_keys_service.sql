-- Keys are owned by the keys service now; ingress authenticates through key.lookup.
DROP TABLE IF EXISTS ingress.keys;
