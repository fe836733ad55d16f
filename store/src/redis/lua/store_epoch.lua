-- The store's epoch, drawn by the caller and kept only if the store has none (Redis lost it or is new).
-- KEYS: store meta   ARGV: candidate epoch
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
return redis.call('HGET', KEYS[1], 'epoch')
